"""An embedded NimbusImage-compatible HTTP server: a test double of the platform.

    from nimbus_server import NimbusServer
    with NimbusServer() as server:
        ds_id = server.add_dataset(frames)   # (XY, Z, T, C, H, W)
        client = nimbusimage.connect(server.url, token=server.token)
"""

from nimbus_server.access import ADMIN, NONE, READ, WRITE
from nimbus_server.api import NEWER_ROUTES
from nimbus_server.errors import ApiError
from nimbus_server.server import Fault, NimbusServer

__all__ = ["ADMIN", "NEWER_ROUTES", "NONE", "READ", "WRITE", "ApiError", "Fault", "NimbusServer"]
