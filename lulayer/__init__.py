"""lulayer: package layering for OSTree systems, applied live."""

__version__ = "0.1.0"

import gi

# Every module that talks to libostree uses this one version of its bindings.
gi.require_version("OSTree", "1.0")
