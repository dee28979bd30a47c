/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Facts about the iommufd uapi that the Linux 6.12 stable selftests (iommufd.c,
 * iommufd_utils.h) use but the 6.12 headers do not yet define. Forced into the build with
 * `-include` by conformance/run.sh; the test file itself is compiled unmodified.
 * Constants and one field name only; values as in the later upstream uapi.
 */
#ifndef UIOMMU_CONFORMANCE_FACTS_H
#define UIOMMU_CONFORMANCE_FACTS_H

/* enum iommu_hw_info_type: the default type, same value as IOMMU_HW_INFO_TYPE_NONE. */
#define IOMMU_HW_INFO_TYPE_DEFAULT 0

/* enum iommufd_hw_info_flags: the caller names the type it wants in the type field. */
#define IOMMU_HW_INFO_FLAG_INPUT_TYPE (1 << 0)

/*
 * struct iommu_hw_info: later headers make the type field a union of in_data_type (input,
 * with IOMMU_HW_INFO_FLAG_INPUT_TYPE) and out_data_type (output), same offset and size.
 */
#define in_data_type out_data_type

/* iommufd_test.h, IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS dev_flags: a PASID-capable mock device. */
#define MOCK_FLAGS_DEVICE_PASID (1 << 2)

/* iommufd_test.h: the PASID width (out_max_pasid_log2) the PASID-capable mock device reports. */
#define MOCK_PASID_WIDTH 20

#endif
