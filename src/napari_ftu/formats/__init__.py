"""Label formats: RLE, COCO, GeoJSON, competition CSVs, dataset layouts and the format table."""
