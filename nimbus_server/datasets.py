"""Datasets as the app makes them: a folder holding the image and its multi-source
``multi-source2.json`` (only the JSON item is a large image), a configuration with the
layers, and the owner's dataset view linking the two; each with its own access list."""

from __future__ import annotations

import copy
import uuid

import numpy as np

from nimbus_server import access
from nimbus_server.errors import ApiError
from nimbus_server.images import ImageData
from nimbus_server.paging import Paging, now, out, page
from nimbus_server.schema import ObjectIdFactory

LAYER_COLORS = ("#FF0000", "#00FF00", "#0000FF", "#FFFFFF")
MULTI_SOURCE_NAME = "multi-source2.json"
# The app's placeholder when a file has no calibration (1 m per pixel).
_PLACEHOLDER_SCALES = {
    "pixelSize": {"value": 1, "unit": "m"},
    "zStep": {"value": 1, "unit": "m"},
    "tStep": {"value": 1, "unit": "s"},
}


def missing(model: str, doc_id: str) -> ApiError:
    """Girder's answer to an id that names nothing."""
    return ApiError(400, f"Invalid {model} id ({doc_id}).")


def load(table: dict[str, dict], model: str, doc_id: str) -> dict:
    if doc_id not in table:
        raise missing(model, doc_id)
    return table[doc_id]


def app_compatibility(image: ImageData, channel_names: list[str]) -> dict:
    """What the app records of a dataset in its configuration, to check others against it."""
    def dimensions(size: int) -> str:
        return "multiple" if size > 1 else "one"

    return {"xyDimensions": dimensions(image.num_xy), "zDimensions": dimensions(image.num_z),
            "tDimensions": dimensions(image.num_t), "channels": {str(c): n for c, n in enumerate(channel_names)}}


def configuration_layers(layers: list[dict] | None, channel_names: list[str]) -> list[dict]:
    """The given layers completed, or one visible layer per channel."""
    if layers is None:
        layers = [{"channel": channel} for channel in range(len(channel_names))]
    return [complete_layer(layer, index, channel_names) for index, layer in enumerate(layers)]


def complete_layer(layer: dict, index: int, channel_names: list[str]) -> dict:
    """A layer with every key the app's configuration has, given ones kept."""
    channel = layer.get("channel", index)
    defaults = {
        "id": str(uuid.uuid4()),
        "name": channel_names[channel] if 0 <= channel < len(channel_names) else f"Channel {channel}",
        "color": LAYER_COLORS[index % len(LAYER_COLORS)],
        "channel": channel,
        "visible": True,
        "contrast": {"mode": "percentile", "blackPoint": 0, "whitePoint": 100},
        "xy": {"type": "current", "value": None},
        "z": {"type": "current", "value": None},
        "time": {"type": "current", "value": None},
        "layerGroup": None,
    }
    return {**defaults, **copy.deepcopy(layer)}


class Datasets:
    """Folders, items with their images, configurations and dataset views. The caller
    (`Store`) holds the lock."""

    def __init__(self, ids: ObjectIdFactory) -> None:
        self._ids = ids
        self.folders: dict[str, dict] = {}
        self.items: dict[str, dict] = {}
        self.images: dict[str, ImageData] = {}
        self.configurations: dict[str, dict] = {}
        self.views: dict[str, dict] = {}

    def add_private_folder(self, user: dict) -> str:
        folder_id = self._ids.new()
        self.folders[folder_id] = self._folder_doc(folder_id, "Private", "user", user["_id"], user, {})
        return folder_id

    def _folder_doc(self, folder_id: str, name: str, parent_type: str, parent_id: str, owner: dict,
                    meta: dict) -> dict:
        return {
            "_id": folder_id, "name": name, "description": "", "parentCollection": parent_type,
            "parentId": parent_id, "creatorId": owner["_id"], "baseParentType": "user",
            "baseParentId": owner["_id"], "public": False, "created": now(),
            "updated": now(), "size": 0, "meta": meta, "access": access.new_access(owner["_id"]),
        }

    def add(self, frames: np.ndarray, name: str, channel_names: list[str] | None, layers: list[dict] | None,
            mm_x: float | None, owner: dict, private_folder_id: str) -> str:
        """A dataset as the app's createDataset makes it (no selectedLargeImageId: the
        app stores null, which Girder's metadata drops); returns its folder id."""
        num_c = frames.shape[3] if frames.ndim == 6 else 0
        names = list(channel_names) if channel_names is not None else [f"Channel {c}" for c in range(num_c)]
        image = ImageData(frames, names, mm_x)
        folder_id, image_id, json_id = self._ids.new(), self._ids.new(), self._ids.new()
        meta = {"subtype": "contrastDataset"}
        self.folders[folder_id] = self._folder_doc(folder_id, name, "folder", private_folder_id, owner, meta)
        self.items[image_id] = self._item_doc(image_id, folder_id, f"{name}.tiff", owner)
        self.items[json_id] = {**self._item_doc(json_id, folder_id, MULTI_SOURCE_NAME, owner),
                               "largeImage": {"fileId": self._ids.new(), "sourceName": "multi"}}
        self.images[json_id] = image
        configuration_id = self._add_configuration(name, names, layers, mm_x, owner, private_folder_id,
                                                   app_compatibility(image, names))
        self._add_view(folder_id, configuration_id, owner)
        return folder_id

    @staticmethod
    def _item_doc(item_id: str, folder_id: str, name: str, owner: dict) -> dict:
        return {
            "_id": item_id, "name": name, "description": "", "folderId": folder_id,
            "baseParentType": "user", "baseParentId": owner["_id"],
            "creatorId": owner["_id"], "created": now(), "updated": now(),
            "size": 0, "meta": {},
        }

    def _add_configuration(self, name: str, channel_names: list[str], layers: list[dict] | None,
                           mm_x: float | None, owner: dict, private_folder_id: str, compatibility: dict) -> str:
        configuration_id = self._ids.new()
        scales = copy.deepcopy(_PLACEHOLDER_SCALES)
        if mm_x:
            scales["pixelSize"] = {"value": mm_x, "unit": "mm"}
        self.configurations[configuration_id] = {
            "_id": configuration_id, "name": f"{name} configuration", "description": "",
            "folderId": private_folder_id, "baseParentType": "folder", "baseParentId": private_folder_id,
            "creatorId": owner["_id"], "created": now(), "updated": now(), "size": 0,
            "meta": {
                "subtype": "contrastConfiguration",
                "compatibility": compatibility,
                "layers": configuration_layers(layers, channel_names),
                "tools": [], "propertyIds": [], "snapshots": [], "pipelines": [], "scales": scales,
            },
            "access": access.new_access(owner["_id"]),
        }
        return configuration_id

    def _add_view(self, dataset_id: str, configuration_id: str, owner: dict) -> None:
        view_id = self._ids.new()
        self.views[view_id] = {
            "_id": view_id, "datasetId": dataset_id, "configurationId": configuration_id,
            "lastLocation": {"xy": 0, "z": 0, "time": 0}, "layerContrasts": {},
            "access": access.new_access(owner["_id"]),
        }

    # --- access ------------------------------------------------------------------------

    def share(self, dataset_id: str, user: dict, level: int, view: bool) -> None:
        """Give `user` `level` on the dataset's folder; with `view`, on its views and their
        configurations too, as the app's Share does (`dataset_view/share`)."""
        access.grant(load(self.folders, "folder", dataset_id), user["_id"], level)
        if view:
            for shared in self.views.values():
                if shared["datasetId"] == dataset_id:
                    access.grant(shared, user["_id"], level)
                    access.grant(self.configurations[shared["configurationId"]], user["_id"], level)

    def require(self, dataset_id: str, user: dict, level: int) -> dict:
        """The dataset's folder, if `user` has `level` on it (Folder().load(level=..., exc=True))."""
        folder = load(self.folders, "folder", dataset_id)
        access.require(folder, user, level, "folder")
        return folder

    def is_dataset(self, dataset_id: str) -> bool:
        folder = self.folders.get(dataset_id)
        return folder is not None and folder.get("meta", {}).get("subtype") == "contrastDataset"

    # --- reads -------------------------------------------------------------------------

    def get_folder(self, folder_id: str, user: dict) -> dict:
        folder = load(self.folders, "folder", folder_id)
        access.require(folder, user, access.READ, "folder")
        return out(access.filtered(folder, user, "folder"))

    def _readable_item(self, item_id: str, user: dict) -> dict:
        item = load(self.items, "item", item_id)
        access.require(self.folders[item["folderId"]], user, access.READ, "folder")
        return item

    def get_item(self, item_id: str, user: dict) -> dict:
        return out({**self._readable_item(item_id, user), "_modelType": "item"})

    def list_items(self, folder_id: str, paging: Paging, user: dict) -> list[dict]:
        self.require(folder_id, user, access.READ)
        items = [
            {**item, "lowerName": item["name"].lower(), "_modelType": "item"}
            for item in self.items.values() if item["folderId"] == folder_id
        ]
        found = page(items, paging)
        for item in found:
            del item["lowerName"]
        return out(found)

    def image(self, item_id: str, user: dict) -> ImageData:
        self._readable_item(item_id, user)
        if item_id not in self.images:
            raise ApiError(400, "No large image file in this item.")
        return self.images[item_id]

    def list_views(self, dataset_id: str | None, current_user_only: bool, paging: Paging, user: dict) -> list[dict]:
        """The views `user` may read; `current_user_only`: those they administer (own)."""
        wanted = access.ADMIN if current_user_only else access.READ
        views = [
            view for view in self.views.values()
            if (dataset_id is None or view["datasetId"] == dataset_id) and access.level_of(view, user) >= wanted
        ]
        return out(page(views, paging))

    def get_configuration(self, configuration_id: str, user: dict) -> dict:
        configuration = load(self.configurations, "upenn_collection", configuration_id)
        access.require(configuration, user, access.READ, "upenn_collection")
        return out(access.filtered(configuration, user, "upenn_collection"))
