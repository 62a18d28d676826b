"""Task heads: classifiers, dense decoders, DINO heads."""
