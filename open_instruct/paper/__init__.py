"""Paper tooling: parameter counts, result tables, plots and the experiment-grid runner (no training code)."""
