"""Running leafid on existing scale-out engines (see :mod:`leafid.scale.dask_batch`)."""
