"""The seed models assembled from ``medkernels.nn`` modules."""
