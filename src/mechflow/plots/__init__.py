"""Figures drawn from tidy analysis tables; nothing here touches a model.

Importing this package fixes matplotlib's non-interactive Agg backend, so figure steps run the
same on a laptop, a CI runner and a SLURM node without a display.
"""

import matplotlib

matplotlib.use("Agg")
