"""Reading and writing slides and images, resampling, synthetic slides."""
