"""What a model is, where it comes from and how it runs a batch of tiles: card, loading and saving, backends."""
