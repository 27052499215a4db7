"""What runs the models: the asset catalog and its downloads, devices and dtypes, cost estimates, model loading, training hyper-parameters."""
