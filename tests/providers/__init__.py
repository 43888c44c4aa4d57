"""Helpers of the provider tests: recorded STAC material, replay servers and the asset gate."""
