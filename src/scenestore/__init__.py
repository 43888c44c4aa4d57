"""scenestore: a raw data store for Sentinel-2 L2A scenes."""
