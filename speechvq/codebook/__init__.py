from .codebook import Codebook, load_codebook, resolve_codebook_path
from .kmeans import KMeansResult, kmeans

__all__ = ["Codebook", "KMeansResult", "kmeans", "load_codebook", "resolve_codebook_path"]
