"""The suite keeps validated files (engine.cache) in its own folder, never the user's: set before
any test imports the engine, and inherited by every `engine` the tests launch."""

from __future__ import annotations

import os
import tempfile

os.environ["ENGINE_CACHE_DIR"] = tempfile.mkdtemp(prefix="engine-test-cache-")
