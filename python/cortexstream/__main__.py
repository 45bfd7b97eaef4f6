"""``python -m cortexstream pull|list|rm|cp|add``: the model store (see ``cortexstream.models``)."""

import sys

from cortexstream.models import main

sys.exit(main())
