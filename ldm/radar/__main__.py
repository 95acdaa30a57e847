"""python -m ldm.radar: convert raw radar recordings or another group's spectrograms into a training folder."""
import sys

from ldm.radar.datasets import main

sys.exit(main())
