"""Token mixers: each file holds a pure function for the math and a module owning the parameters."""
