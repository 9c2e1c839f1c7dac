"""The steps of each phase notebook as package functions (a notebook cell is one to three calls)."""
