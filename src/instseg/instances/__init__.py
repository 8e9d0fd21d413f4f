"""From network outputs to instances: clustering the embeddings, cleaning the label maps, object sizes."""
