"""Marketer reports: self-contained HTML pages (inline CSS and SVG charts, nothing fetched) built from the membership
store, the serve folder and the champions' MLflow runs. `site.write_reports` writes them all; `render` holds the
Jinja2 environment and the layout's shared facts, `plots` the charts' look, `segment_pages` the overview and segment
pages' data, `model_pages` the model pages', `customer` the one-customer page."""
