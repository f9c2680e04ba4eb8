"""napari docks: thin views over the Qt-free core (``napari_ftu.*``)."""
