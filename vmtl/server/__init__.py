"""vmtl.server: start the real Triton server (`vmtl serve`) and the python-backend models it hosts."""
