"""Reports: aggregate many job folders into paper-style tables, mCE, plots and comparisons."""
