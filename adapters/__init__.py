"""AHN adapters shipped with the package (weights, card, training command and log); see modeling_ahn.default.shipped."""
