"""The results layer: a benchmark's tables and sample grids from its runs."""
