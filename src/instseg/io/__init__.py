"""Files in and out: images and label maps, input gathering and output names, pictures, COCO files, atomic writes."""
