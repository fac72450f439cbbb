"""Zarr v3 activation stores: one array per TransformerLens hook, provenance in the group attrs,
every chunk file in a manifest that readers check."""

from mechflow.store.reader import (
    ActivationStore,
    DamagedStoreError,
    IncompleteStoreError,
    ProvenanceMismatchError,
    open_store,
)
from mechflow.store.writer import dimension_names, write_activation_store, write_array_store

__all__ = [
    "ActivationStore",
    "DamagedStoreError",
    "IncompleteStoreError",
    "ProvenanceMismatchError",
    "dimension_names",
    "open_store",
    "write_activation_store",
    "write_array_store",
]
