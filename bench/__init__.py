"""Side-by-side benchmark of in-process generation and generation through Triton."""
