"""Per-object measurements and per-slide summaries of the FTUs a label image holds."""
