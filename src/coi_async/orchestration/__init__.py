"""Sessions, slots and bulk operations: what coi does with instances. Never imports rich or click."""
