"""The shared face pipeline: image -> faces -> aligned crops -> embeddings -> distances."""
