"""Storage backends behind the UCS interface: a local directory and Google Cloud Storage."""
