"""Where a model comes from: resolving MODEL (path, archive, hub handle, architecture name), safe archive
extraction, the op check that refuses graphs reaching outside the model, and `inspect`."""
