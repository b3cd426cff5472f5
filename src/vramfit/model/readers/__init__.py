"""config.json readers, one per model_type, grouped by family; `vramfit.model.hf_config` is their front door."""
