"""Zarr v3 activation stores: one array per TransformerLens hook, provenance in the group attrs."""

from mechflow.store.reader import (
    ActivationStore,
    IncompleteStoreError,
    ProvenanceMismatchError,
    open_store,
)
from mechflow.store.writer import dimension_names, write_activation_store

__all__ = [
    "ActivationStore",
    "IncompleteStoreError",
    "ProvenanceMismatchError",
    "dimension_names",
    "open_store",
    "write_activation_store",
]
