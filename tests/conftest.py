import os
import sys

# Tests import their helpers as `from helpers import ...`.
sys.path.insert(0, os.path.dirname(__file__))
