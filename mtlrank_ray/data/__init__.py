"""Data in: the input formats, gene selection and clustering, the aligned store."""

from .prepare import prepare_store
from .store import AlignedTissue, load_tissue, store_tissues

__all__ = ["AlignedTissue", "load_tissue", "prepare_store", "store_tissues"]
