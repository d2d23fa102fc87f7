"""The predictive-maintenance example: simulated bearings, gateway, data, autoencoder, trainer."""
