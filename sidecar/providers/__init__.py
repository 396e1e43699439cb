"""Provider adapters: one class per wire format behind the `Provider` seam."""
