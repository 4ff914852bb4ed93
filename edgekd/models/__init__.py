"""edgekd.models"""
