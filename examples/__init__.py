"""The bundled examples: the demo model `tiny-llama/` (with its calibration text and demo job) and example plans.

Installed as the package data of `prunesearch.examples`, so `prunesearch demo` finds them from a wheel as well as
from the source tree (`prunesearch.service.settings.EXAMPLES_DIR`)."""
