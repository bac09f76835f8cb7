"""Ray Tune sweeps over fine-tuning settings (``ace-ray tune``): spaces, the sweep driver, results."""
