"""Input data: schemas, validating readers, importers and the sample-data generator."""
