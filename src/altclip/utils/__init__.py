"""Helpers of the library and its applications: image files and folders (``files``), devices, a progress bar."""
