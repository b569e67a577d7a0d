"""Model monitoring: drift and data quality of a deployment's collected data against a
baseline (Azure ML's data drift, prediction drift and data quality signals)."""
