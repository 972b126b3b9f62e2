"""pragma repository of Clonezilla restore ISOs kept in a Google Drive folder.

``pragma sync repository`` lists the Drive folder, downloads what changed,
restores each Clonezilla image straight from its ISO into a local disk image
(no VM: ``sfdisk`` + ``partclone``), writes ``<cluster>-local.xml`` and
registers it in ``vcdb.txt``. ``pragma boot`` then finds the images in place.

The entry point is :class:`pragma_repo_clonezilla.repository.ClonezillaRepository`;
this package's modules import their heavy dependencies (requests, pycdlib)
only when used.
"""

__version__ = "0.1.0"
