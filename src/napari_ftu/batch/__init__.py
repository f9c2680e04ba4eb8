"""Batch segmentation of many slides on Dask."""
