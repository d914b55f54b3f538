"""Open data portal (公共数据开放): publish by plan, de-identify, CKAN API, DCAT, downloads."""
