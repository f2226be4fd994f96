"""Device model loading, generation backends and cloud backends."""
