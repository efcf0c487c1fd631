"""facenet_platform.train"""
