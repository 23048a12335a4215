"""An embedded NimbusImage-compatible HTTP server: a test double of the platform.

    from nimbus_server import NimbusServer
    with NimbusServer() as server:
        ds_id = server.add_dataset(frames)   # (XY, Z, T, C, H, W)
        client = nimbusimage.connect(server.url, token=server.token)
"""

from nimbus_server.errors import ApiError
from nimbus_server.server import Fault, NimbusServer

__all__ = ["ApiError", "Fault", "NimbusServer"]
