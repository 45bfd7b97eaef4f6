"""``python -m cortexstream pull [smollm2|minilm|all]``: fill the model cache."""

import sys

from cortexstream.models import main

sys.exit(main())
